"""Names the backends share (nnU-Net's and the fake one, which must not load torch): parameter groups whose
gradients can be taken, and the losses they can be taken of."""

PARAMETER_GROUPS = ("bottleneck", "last-decoder-conv", "decoder-convs", "decoder", "network")
LOSSES = ("log-likelihood", "log-likelihood-deep-supervision", "nnunet")
