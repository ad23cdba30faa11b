"""Studies: plans of runs, their lockstep stacks, carrying them out, and the run folders they write.
(Named in the plural: `mnistlab.study` is the function that runs the study.)"""
