"""tokenlab benchmarks against peers: `python -m bench.run NAME | --all | --list`.

Each benchmark is one module in this package with a `DESCRIPTION` string and a `run() -> dict` returning
`{"ours": {metric: value}, "peers": {peer name: {metric: value}}}`, all measured in the same process.
"""
