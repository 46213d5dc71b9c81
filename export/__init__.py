"""PyTorch side: model definitions, checkpoints, the reference predictor, and (later stages) export."""
