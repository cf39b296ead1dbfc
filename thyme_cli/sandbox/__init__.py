"""Running model-written code: the Sandbox protocol, the jailed worker, Thyme's code repairs."""
