using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Design;

namespace Conveyor.Storage;

/// <summary>Lets <c>dotnet ef migrations add</c> build the model without a running host.</summary>
internal sealed class DesignTimeDbContextFactory : IDesignTimeDbContextFactory<ConveyorDbContext>
{
    public ConveyorDbContext CreateDbContext(string[] args)
    {
        var builder = new DbContextOptionsBuilder<ConveyorDbContext>();
        StorageServiceCollectionExtensions.Configure(builder,
            Environment.GetEnvironmentVariable("ConnectionStrings__Conveyor")
            ?? "Host=127.0.0.1;Database=conveyor;Username=conveyor;Password=conveyor");
        return new ConveyorDbContext(builder.Options);
    }
}
