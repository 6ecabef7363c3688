"""UVC: the method (masks, gates, budget, primal-dual)."""
