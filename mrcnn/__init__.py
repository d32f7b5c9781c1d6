"""Mask R-CNN (FPN + ResNet) on Keras 3, compatible with matterport's mrcnn API and weights."""
