"""What a trained model's numbers say: its errors on the test set, statistics over seeds, and the
lab report's figures."""
