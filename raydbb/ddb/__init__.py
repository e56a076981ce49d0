"""The DDB method (arXiv 2503.17226): selection, tokens, masks, repaints, pruning, retraining.

Built on the generic engine (:mod:`raydbb.engine`) and training stack (:mod:`raydbb.training`);
nothing in those imports this package.
"""
