"""Vector search without SQL: which FAISS index kind suits how many vectors, and its
crash-safe files (:mod:`.indexes`); one index's stored vectors as sorted arrays
(:mod:`.vector_table`); the in-memory indexes and vector tables kept by generation
(:mod:`.cache`); the float16 vectors a published snapshot maps (:mod:`.at_rest`) and its
filter postings, each value's vectors per IVF list (:mod:`.postings`); and the filtered
top-k planner (:mod:`.planner`).

It is a package of its own so that the search mathematics can be read, tested and reused
(one shard of :mod:`sst_search.sharding` runs the same planner) without the catalog: the
store (:mod:`sst_search.store`) decides which generation of which index is current and hands
its vectors in; nothing here opens a database.
"""
