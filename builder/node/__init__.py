"""Code that runs on the node (stdlib only): installed into the image by the elements."""
