"""Reweighted retraining (DDB step 7, paper Eq. 6-8).

``loss`` is the Eq. 6-8 loss, ``repaints`` chooses the repaints that enter, ``run`` is the full
fine-tuning under Ray Train, ``head`` the fast head-only mode on cached features (used by tune).
"""
