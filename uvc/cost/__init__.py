"""What an architecture costs: the MACs formula (flops), cost models over it (cost), the budget
constraint R <= budget (budget), the latency model from a measured table (latency, latency_table) and
the timing of a fitted architecture whole (latency_check)."""
