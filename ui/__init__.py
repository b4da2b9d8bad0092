"""The sst-search Streamlit app: search, specimen, collection and export pages over a read-only index.

Start it with ``sst-search ui --db INDEX`` (or ``streamlit run ui/app.py -- --db INDEX``).
"""
