"""Training and evaluation recipes (shapes, VGG Image Annotator, COCO), like matterport's samples/."""
