"""Library code for images: the CLIP encoder, decoding, the describer, context sentences, search."""
