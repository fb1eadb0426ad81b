from halo_verifier_sandbox.service import VerifierSandbox

if __name__ == "__main__":
    VerifierSandbox.main()
