"""Annotation mode: the loop with a person in it.

``oracle`` is the seam between the loop and whoever labels the selected slices (the dataset's ground truth, or a
person); ``store`` keeps the labels a person has given; ``batch`` hands a round's selection to the annotator
(``nnal query``); ``ingest`` takes the corrected masks back, checked and all at once (``nnal ingest``); ``status``
tells where an experiment stands (``nnal status``). No torch or nnU-Net here: the backend does the model's part.
"""
