"""The MLP as a stack of models: initialisation, forward pass, hand-written backward pass, dropout
masks, penalties; its Keras-style summary; its weights on disk."""
