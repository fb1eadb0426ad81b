from halo_sweeps.service import Sweeps

if __name__ == "__main__":
    Sweeps.main()
