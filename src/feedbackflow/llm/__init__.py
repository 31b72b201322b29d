"""One language-model client stack: the shared config keys (`config`), the reply cache (`cache`) and the cached
client on it (`client`), the openai and hf backends (`openai_backend`, `hf_backend`); on them the judge (`judge`),
ILF's language model (`language_model`) and the generate-texts stage (`generation`)."""
