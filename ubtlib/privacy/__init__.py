"""Privacy with backdoors: the identity inference attack (idia), unlearning names from the text
encoder and faces from the image encoder (unlearning), and the papers' sweeps (forgetting)."""
