"""rtk: robustness toolkit."""
