"""Cold-start synthetic domain data: templated text spoken by eSpeak NG voices.

`moonlora.data.synth.build.build_domain` writes wav clips plus NeMo-style train/test
manifests for a domain registered in `moonlora.data.synth.domains.DOMAINS`.
"""
