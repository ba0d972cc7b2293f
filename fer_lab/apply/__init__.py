"""Apply (06_apply): a trained model on photos and video: faces found, cropped, classified, tracked."""
