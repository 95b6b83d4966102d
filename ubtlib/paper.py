"""Numbers the papers report, to print beside ours (facts, with their source).

UBT: Liang et al., "Unlearning Backdoor Threats", Table 1 (CC3M 500K subset, 1,500 poisons,
ViT-B/32, ImageNet zero-shot). CA and ASR in %.
"""

UBT_PRETRAINED_CA = 62.69  # Table 1, "Pretrained CLIP" row: ImageNet zero-shot top-1, ViT-B/32

UBT_TABLE1 = {  # attack -> defense -> (CA, ASR)
    "badnet": {"No defense": (62.61, 80.92), "CleanCLIP": (58.95, 14.6),
               "UBT w/o token-level": (61.29, 0.01), "UBT": (61.51, 0.00)},
    "blended": {"No defense": (62.58, 97.99), "CleanCLIP": (59.43, 2.24),
                "UBT w/o token-level": (60.81, 0.156), "UBT": (60.56, 0.08)},
    "sig": {"No defense": (62.77, 90.90), "CleanCLIP": (59.44, 48.48),
            "UBT w/o token-level": (62.72, 0.25), "UBT": (62.70, 0.27)},
    "ssba": {"No defense": (62.77, 66.22), "CleanCLIP": (58.90, 15.53),
             "UBT w/o token-level": (62.20, 4.332), "UBT": (62.144, 2.814)},
}
