from halo_eval.service import Eval

if __name__ == "__main__":
    Eval.main()
