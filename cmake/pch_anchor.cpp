// Anchor translation unit for the shared ATen precompiled header.
