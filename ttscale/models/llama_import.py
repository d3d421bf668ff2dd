"""The Llama importer's names, kept for callers: `hf_import` reads every family.

`load_llama`, `read_llama_config` and `read_llama_params` are `load_hf`,
`read_hf_config` and `read_hf_params`; `checkpoint.format="llama"` is
`checkpoint.format="hf"`.
"""

from ttscale.models import hf_import

CONFIG_FILE = hf_import.CONFIG_FILE
INDEX_FILE = hf_import.INDEX_FILE
SINGLE_FILE = hf_import.SINGLE_FILE
load_llama = hf_import.load_hf
read_llama_config = hf_import.read_hf_config
read_llama_params = hf_import.read_hf_params
