"""Batch indexing of whole collections: plan, segment, embed, write - locally or on Ray.

The layer above the library (it imports ``sst_search``, never the reverse). A notebook
reaches it through ``sst_search.index``, which the package's public surface resolves from
:mod:`indexer.entry` on first use; the CLI's ``index`` runs the same job.
"""
