"""Textual inversion (DDB step 3, paper Eq. 1): one learned token per class.

``pool`` prepares each class's images and masks, ``model`` checks and loads the frozen inpainter,
``trainer`` holds the loss and the optimisation of one token, ``run`` plans, validates and drives
the classes (one Ray task each). Loading a learned token for inference is :mod:`raydbb.ddb.tokens`.
"""
