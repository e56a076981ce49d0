"""The method's generation stages (score, mask, expand, inpaint, prune), one per module."""
