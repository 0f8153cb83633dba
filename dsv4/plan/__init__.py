"""The memory and speed planner: weight bytes by group under a recipe, KV cache bytes, the split of experts over
device / RAM / disk and the bandwidth-bound decode speed (`make_plan`); the recipe and device tables (`ladder`)."""
