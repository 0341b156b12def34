using Conveyor.Api.Hosting;
using Conveyor.Api.Jobs;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;

namespace Conveyor.Api;

/// <summary>Builds the Api host; <c>Program.cs</c> runs it and the integration tests start it in-process.</summary>
public static class ApiApp
{
    public static WebApplication Build(string[] args)
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions
        {
            Args = args,
            // Tests build the app from their own entry assembly; keep the name the same either way.
            ApplicationName = typeof(ApiApp).Assembly.GetName().Name,
        });

        builder.Services.AddConveyorStorage(builder.Configuration);
        builder.Services.AddApiMessaging(builder.Configuration);
        builder.Services.AddConveyorHealthChecks();
        builder.Services.AddApiProblemDetails();
        builder.Services.AddOpenApi();
        builder.Services.AddJobs();

        var app = builder.Build();

        app.UseApiErrorHandling();
        app.MapOpenApi();
        app.MapConveyorHealthEndpoints();
        app.MapJobsApi();

        return app;
    }
}
