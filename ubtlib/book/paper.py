"""Numbers the papers report, to print beside ours (facts, with their source).

UBT: Liang et al., "Unlearning Backdoor Threats", Table 1 (CC3M 500K subset, 1,500 poisons,
ViT-B/32, ImageNet zero-shot). CA and ASR in %.
"""

UBT_PRETRAINED_CA = 62.69  # Table 1, "Pretrained CLIP" row: ImageNet zero-shot top-1, ViT-B/32
UBT_POISONS, UBT_TRAIN_PAIRS = 1500, 500_000  # Sec. 4: poisons among the CC3M subset's pairs

UBT_TABLE1 = {  # attack -> defense -> (CA, ASR)
    "badnet": {
        "No defense": (62.61, 80.92),
        "CleanCLIP": (58.95, 14.6),
        "UBT w/o token-level": (61.29, 0.01),
        "UBT": (61.51, 0.00),
    },
    "blended": {
        "No defense": (62.58, 97.99),
        "CleanCLIP": (59.43, 2.24),
        "UBT w/o token-level": (60.81, 0.156),
        "UBT": (60.56, 0.08),
    },
    "sig": {
        "No defense": (62.77, 90.90),
        "CleanCLIP": (59.44, 48.48),
        "UBT w/o token-level": (62.72, 0.25),
        "UBT": (62.70, 0.27),
    },
    "ssba": {
        "No defense": (62.77, 66.22),
        "CleanCLIP": (58.90, 15.53),
        "UBT w/o token-level": (62.20, 4.332),
        "UBT": (62.144, 2.814),
    },
}


# ================================================================ Defending Our Privacy With Backdoors
# Hintersdorf, Struppek, Neider, Kersting (2024), OpenCLIP ViT-B/32 trained on LAION-400M;
# FaceScrub identities that the IDIA recognises; ImageNet-V2 zero-shot accuracy. Only what the
# paper's text states as numbers is recorded here (Sec. 4 and 5; the per-size values of its
# Figs. 2 and 3 are in plots and its appendix tables, which are not part of the text we have).
# None means "not stated numerically": the book says so instead of printing a number.

PRIVACY_SET_SIZES = (1, 2, 4, 8, 16, 32, 64)  # names / faces removed at once (nested sets)
PRIVACY_NEUTRAL_TERMS = ("human", "person", "actor", "adult", "child")
PRIVACY_TPR_BEFORE = 100.0  # %, by selection: only identities the IDIA recognises are unlearned

PRIVACY_TEXT = {
    # "the mean true positive rate (TPR) of the IDIA is zero ... independent of how many names
    # were removed" (Fig. 2a), for every neutral term
    "tpr": {k: 0.0 for k in PRIVACY_SET_SIZES},
    # FNR, Sim_Backdoor, Sim_Clean and Sim_Targets: "values greater than 0.99" (a lower bound,
    # not a value); Sim_Clean "stays above 0.99" even for 64 names
    "metrics_above": 0.99,
    # zero-shot accuracy drop (percentage points) after removing 64 names. The text reads
    # "0.05 and 0.12 ... when using no weight regularization. In contrast, for the models
    # without regularization, ... 0.68 and 0.52"; since it also says that no regularisation
    # "results in a slightly higher decrease", we read the smaller drop as the regularised one.
    "top1_drop_64": {"reg": 0.05, "no_reg": 0.68},
    "top5_drop_64": {"reg": 0.12, "no_reg": 0.52},
}

PRIVACY_IMAGE = {
    # "when unlearning a single and two identities at once, the TPR is at zero"; for more
    # identities the TPR "is increasing with the number of unlearned faces" (no value stated)
    "tpr": {1: 0.0, 2: 0.0, 4: None, 8: None, 16: None, 32: None, 64: None},
    # zero-shot accuracy drop (percentage points) after removing 64 faces
    "top1_drop_64": {"reg": 4.73, "no_reg": 5.92},
    "top5_drop_64": {"reg": 4.42, "no_reg": 5.56},
    # "Using weight regularization decreases the FNR by 1.68 percentage points on average"
    "fnr_cost_of_reg": 1.68,
}

PRIVACY_BOTH = {
    # "For all the numbers of identities removed at once, the TPR of the IDIA is zero"
    "tpr": {k: 0.0 for k in PRIVACY_SET_SIZES},
}
