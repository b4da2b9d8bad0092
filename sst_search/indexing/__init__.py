"""Batch indexing of whole collections: plan, segment, embed, write - locally or on Ray.

Part of the library because a notebook indexes too (:func:`sst_search.index`) and the
library never imports the layers above it: the CLI's ``index`` and a notebook run this
same job.
"""
