"""Tools beside the method: the demo inpainter's trainer and the perfect-counterfactual generator.

Nothing in :mod:`raydbb.ddb` or :mod:`raydbb.engine` imports them.
"""
