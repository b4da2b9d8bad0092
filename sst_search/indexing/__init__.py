"""Batch indexing of whole collections: plan, segment, embed, write - locally or on Ray.

Part of the library because indexing is something a notebook does too
(:func:`sst_search.index`): the library never imports the layers above it, so the job that
the CLI and the app's users run has to live here.
"""
