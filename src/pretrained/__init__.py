"""Transfer learning from a pretrained convolutional base (model=mobilenet_v2): model, feature cache, engine, pretrain stage."""
