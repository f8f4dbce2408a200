"""Publishing built images to clouds: `aws` turns a build's raw image into AMIs."""
