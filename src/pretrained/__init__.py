"""Transfer learning from a pretrained convolutional base (model=mobilenet_v2).

model, feature cache, engine (two phases on src/fitting.py's fit), and the pretraining stage.
"""
