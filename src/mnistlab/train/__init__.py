"""Training: how to run (engine), a lockstep stack of models (fit), and the lab's two-phase protocol."""
