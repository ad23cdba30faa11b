"""Studies: plans of runs, their lockstep stacks, carrying them out, and the run folders they write."""
