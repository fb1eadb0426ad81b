from halo_rollout.service import Rollout

if __name__ == "__main__":
    Rollout.main()
