"""What runs inside the jail. Stdlib only (plus numpy/PIL/cv2 where the model code needs them), and
nothing of thyme outside this package: the jail binds only this folder."""
