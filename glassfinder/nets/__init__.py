"""Network building blocks and weights files shared by the face runtime and the glasses embedding."""
