using System.Diagnostics;

namespace Conveyor.Api.Hosting;

internal static class ErrorHandling
{
    /// <summary>Every error answer is an RFC 9457 problem document carrying the trace id.</summary>
    public static IServiceCollection AddApiProblemDetails(this IServiceCollection services) =>
        services.AddProblemDetails(options => options.CustomizeProblemDetails = context =>
            context.ProblemDetails.Extensions.TryAdd(
                "traceId", Activity.Current?.Id ?? context.HttpContext.TraceIdentifier));

    /// <summary>
    /// Unhandled exceptions become a bare 500 problem (the details go to the log, never to the
    /// client, in every environment); empty 4xx/5xx answers such as unmatched routes get a body.
    /// </summary>
    public static WebApplication UseApiErrorHandling(this WebApplication app)
    {
        app.UseExceptionHandler(new ExceptionHandlerOptions
        {
            StatusCodeSelector = exception => exception is BadHttpRequestException bad
                ? bad.StatusCode
                : StatusCodes.Status500InternalServerError,
        });
        app.UseStatusCodePages();
        return app;
    }
}
