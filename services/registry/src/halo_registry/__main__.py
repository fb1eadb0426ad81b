from halo_registry.service import Registry

if __name__ == "__main__":
    Registry.main()
