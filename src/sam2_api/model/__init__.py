"""Everything ``SAM2Model`` runs (one process, the device): the weights, the device thread, Meta's
encoder and decoder, the caches, the mask generator, the video tracker. Imported only there."""
