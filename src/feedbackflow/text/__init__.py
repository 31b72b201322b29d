"""Text and token tools shared by every paper: padding and prompt encoding, segmentation, text metrics, sequence NLL."""
