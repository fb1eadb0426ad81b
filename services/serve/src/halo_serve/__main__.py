from halo_serve.service import Serve

if __name__ == "__main__":
    Serve.main()
