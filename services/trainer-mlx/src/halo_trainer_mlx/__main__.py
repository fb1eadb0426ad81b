from halo_trainer_mlx.service import TrainerMlx

if __name__ == "__main__":
    TrainerMlx.main()
