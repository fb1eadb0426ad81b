from halo_trainer_torch.service import TrainerTorch

if __name__ == "__main__":
    TrainerTorch.main()
