"""The only package that imports nnunetv2: planning, training, scoring and evaluation."""
