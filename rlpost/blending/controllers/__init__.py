"""The blending controllers, one module each; each registers itself in `rlpost.blending.base.CONTROLLERS`,
which imports every module of this package the first time a controller is looked up."""
